"""p2pinvite: a peer-to-peer invitation daemon for LAN pairing.

See docs/ARCHITECTURE.md for the layers and docs/PROTOCOL.md for the wire.
"""

__version__ = "0.1.0"
#: Protocol version, carried in mDNS TXT records, Noise prologues and codes.
PROTOCOL_VERSION = 1

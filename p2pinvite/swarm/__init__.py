"""Member swarms: known devices of a log find each other, prove membership and sync."""

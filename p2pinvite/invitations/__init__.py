"""invitations layer."""

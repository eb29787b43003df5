"""OpenPGP: the configured keys, the gateway's own GnuPG keyring, gpg as a subprocess."""

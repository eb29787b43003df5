"""Protocols: each module or package registers its server and client sides in `base`."""

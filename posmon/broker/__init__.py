"""The broker side of posmon: identities, ACLs and the PKI for mutual TLS (issue #14)."""

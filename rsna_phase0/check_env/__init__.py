"""The environment: the version spec (stdlib only), probes of this machine, and the parity check."""

"""Developer tooling: the local control plane and the one-command demo."""

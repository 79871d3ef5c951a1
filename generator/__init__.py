"""etcd-seed: an offline generator of TLS-secured etcd clusters as cloud-init NoCloud seeds."""

__version__ = "0.1.0"

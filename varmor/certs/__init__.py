"""Certificates: the PKI primitives, Secret storage, rotation and caBundle sync."""

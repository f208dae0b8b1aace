"""bluff_ray: adversarial activation pathways (Bluff, VIS 2020) for every class pair, at scale."""

__version__ = "0.2.0"

"""Data: sources, templates, the synthetic smoke set and the prepare stage."""

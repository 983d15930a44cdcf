"""Grid Data Supermarket: the marketplace service of a JupyterHub deployment."""

__version__ = "0.1.0"

"""Federated learning across units: the theft-detection model, its training and aggregation."""

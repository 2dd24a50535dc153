"""The service under load, hostile clients and crashes (`make benchmark`)."""

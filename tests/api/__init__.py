"""Flower's REST API, endpoint by endpoint, against real workers on Redis and RabbitMQ."""

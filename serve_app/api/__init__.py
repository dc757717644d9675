"""The REST API: one router per resource, the error contract, and the request/response schemas."""

"""Ray Serve deployments: one module per deployment, each with one job."""

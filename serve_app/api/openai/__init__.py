"""The OpenAI-compatible API (`/v1/audio/speech`, `/v1/models`): its own schemas, routes and error
shape, served as a sub-application mounted at `/v1`."""

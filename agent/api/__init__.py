"""The UICI agent service: a FastAPI application (`uici serve`)."""

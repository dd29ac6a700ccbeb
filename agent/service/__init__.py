"""The agent service (`uici serve`): the FastAPI app, keys, alert intake, the dispatcher to
Prefect, and the metrics."""

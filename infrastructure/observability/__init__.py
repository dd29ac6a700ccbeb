"""Reading metrics (Prometheus) and logs (Loki) for the universal query operations.

`common` holds what both clients share: the HTTP client of a configured source, error
classification into the executors' ErrorKind, and time windows. Nothing here imports Prefect.
"""

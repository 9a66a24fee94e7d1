"""One module per scenario; each has `run(ctx, selected) -> results.Section`."""

from . import download, latency, memory, register, requests, rerun

# in run order; `requests` and `rerun` reuse data from `register` when it ran first
ALL = {
    "register": register,
    "requests": requests,
    "download": download,
    "memory": memory,
    "rerun": rerun,
    "latency": latency,
}

"""HTTP endpoints added beside app/routes.py, one blueprint per module,
each registered in `create_app`.

| module | endpoints |
|---|---|
| `jobs.py` | `/v1/jobs`: submit a long recording, follow its progress, fetch or cancel it |
"""

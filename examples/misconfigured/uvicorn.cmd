# How the misconfigured example agent is started: one process, proxy headers trusted from anyone.
uvicorn orders_agent.app:app --host 0.0.0.0 --port 8000 --forwarded-allow-ips '*'

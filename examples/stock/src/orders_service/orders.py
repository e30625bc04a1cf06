"""Orders, kept in memory (seeded at start; the database comes later)."""

ORDERS = {
    "A-1001": {"order_id": "A-1001", "customer": "acme", "status": "shipped", "sku": "WIDGET-1", "qty": 3},
    "A-1002": {"order_id": "A-1002", "customer": "globex", "status": "processing", "sku": "GADGET-7", "qty": 1},
    "A-1003": {"order_id": "A-1003", "customer": "initech", "status": "cancelled", "sku": "WIDGET-1", "qty": 10},
}


def find(order_id):
    return ORDERS.get(order_id)

"""One router per resource; api/app.py includes those listed in ROUTER_MODULES."""

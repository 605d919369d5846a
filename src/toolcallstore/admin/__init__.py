"""The operator status page: sessions, what it shows, and its HTML (routes: api/admin_page.py)."""

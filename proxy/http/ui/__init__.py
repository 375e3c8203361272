"""The operator page's static files (index.html, app.js, app.css), package data served by
proxy/http/routes/ui.py. No Python here; stateless."""

"""The web dashboard (`kxr ui`, `kxr serve --ui`, `kxr demo --ui`): scopes, releases in flight, evidence,
the fleet of runtimes and the release history, live.

model.py (pure view models) -> pages.py (escaped HTML, charts.py: inline SVG) -> web.py (aiohttp routes, SSE)
hub.py (one live view of the log and of the fleet per process) and server.py (running it).
"""

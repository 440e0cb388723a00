"""The web dashboard (`kxr ui`, `kxr serve --ui`, `kxr demo --ui`): scopes, releases in flight, evidence, live.

model.py (pure view models) -> pages.py (escaped HTML) -> web.py (aiohttp routes, SSE)
hub.py (one live view of the log per process) and server.py (running it).
"""

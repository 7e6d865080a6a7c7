"""The RAs' review console: a small server-rendered web app beside the Dagster code location.

A separate process (`audio-pipeline review`), not part of the Definitions: it has its own
least-privilege database role (ra_app: SELECT on the RA views, INSERT on sessions, claims
and decisions) and never imports dagster. A top-level package beside audio_assets/ rather than
inside it, because it is not part of the code location: it runs as another process, under
another database role, and deploys to another host if need be. Modules, in the order a request meets them:

- settings.py          what the console reads from the environment
- app.py               the Starlette app: routes, security headers, templates (autoescaped)
- auth.py              sign-in / sign-out, the session and CSRF checks every page goes through
- sign_in_limiter.py   slows and then refuses repeated failed sign-ins
- passwords.py         argon2id hashing (accounts are created by `audio-pipeline review-user`)
- pages.py             queue, item, decision, search and stats pages
- audio.py             the Opus file streamed from the object store, with HTTP Range
- store.py             the data access: named queries in sql/queries/review_*.sql
- accounts.py          the operator's side: creating accounts and the console's login role
- demo.py              the console's part of `audio-pipeline demo` (login, settings, demo RA)
- server.py            runs the app under uvicorn
"""

"""The RAs' review console: a small server-rendered web app beside the Dagster code location.

A separate process (`audio-pipeline review`), not part of the Definitions: it has its own
least-privilege database role (ra_app: SELECT on the RA views, INSERT on sessions, claims
and decisions) and never imports dagster. A top-level package beside audio_assets/ rather than
inside it, because it is not part of the code location: it runs as another process, under
another database role, and deploys to another host if need be. Modules, in the order a request meets them:

- settings.py          what the console reads from the environment (production refuses unsafe ones)
- app.py               the Starlette app: routes, security headers, cross-site refusal, error answers
- auth.py              sign-in / sign-out, the session and CSRF checks every page goes through
- inputs.py            every request value checked at the edge (400 with a message)
- sign_in_limiter.py   caps failed sign-ins per (account, client) and per client, counted up front
- passwords.py         argon2id hashing (accounts are created by `audio-pipeline review-user`)
- pages.py             queue, item (claim and decision by POST), search, stats and sessions pages
- calibration.py       the lead's calibration page, and applying a per-policy threshold
- audio.py             the Opus file streamed from the object store, with HTTP Range
- store.py             the data access and its bounded connection pool: named queries in
                       sql/queries/review_*.sql
- accounts.py          the operator's side: accounts, roles and the console's login role
- recall_audit.py      the share of unflagged items RAs code too (recall estimates)
- export.py            RA decisions as Parquet or CSV, RAs pseudonymised
- commands.py          the operator commands `audio-pipeline` wires in (review-user, -thresholds,
                       -audit, -export)
- demo.py              the console's part of `audio-pipeline demo` (login, settings, demo RA)
- server.py            runs the app under uvicorn
"""

"""The release stage: a registered version becomes a tested image in the registry and, at one fenced commit
point, the champion.

build_context, prune and build make the image; engine, container, push and registry_api talk to Docker and the
registry; smoke tests the running image; candidate composes those into one tested image known by digest; plan,
ledger, converge and history are what a release means to do, its commit and the state after it; record holds the
gate and the release's words, github the GitHub release, lock the deploy lock (the commit point is the fence).
"""

"""`meg serve`: an OpenAI-compatible HTTP server for a base model with an edit pack (FastAPI + uvicorn).

    app.py       the routes, errors in OpenAI's shape, the API key, body and prompt bounds, the page at `/`
    schemas.py   request bodies as OpenAI clients send them (pydantic, strict)
    batcher.py   concurrent requests gathered into one forward pass; bounded queue; per-request timeout
    engine.py    routing + per-row neurons + decoding on one worker thread; live edits saved, then swapped in
    sampling.py  batched decoding where every row has its own neuron, sampling settings, budget and stops
    page.html    the comparison page (plain HTML + JS)

Only the command line (meg/cli/serve.py) imports this package; nothing else in `meg` depends on it.
"""

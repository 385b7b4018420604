"""attnlab.explorer: a local web page with sliders (`attnlab explore`).

    engine.py      Explorer: one loaded model; one forward per update with the attention override and
                   residual-stream steering applied; the greedy continuation from its KV cache
    directions.py  top principal components of the residual stream per layer, cached on disk
    layer_metrics.py  the four per-layer curves, as summaries of attnlab.diagnose metrics
    params.py      request validation and the limits the server enforces
    server.py      standard-library HTTP server: the packaged page (static/) and the JSON API
    passages.py    the public-domain Shakespeare passages (default text, PCA corpus)
    cli.py         `attnlab explore`;  bench.py: `python -m attnlab.explorer.bench` times updates
"""

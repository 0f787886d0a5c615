"""``delfi demo``: a small retrieval and matching run on scikit-image's public-domain / CC0 sample
photos (`delfi.demo.photos`), with synthetic views of known homographies (`delfi.demo.scene`), run
end to end by `delfi.demo.run.run_demo` and summarised by `delfi.demo.summary`."""

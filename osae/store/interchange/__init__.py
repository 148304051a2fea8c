"""Interchange with other tools' files: `osae store import` (.npy, .safetensors, Arrow / SAELens caches) and
`osae store export` (.npy, .safetensors).

Modules: `import_sources` reads foreign files as row blocks, `importer` writes them into a store (resumable),
`exporter` streams a store's rows back out. Public names are re-exported by `osae.store`.
"""

"""``dittohead-gui``: the collector's window (tkinter/ttk, standard library only).

`app` is the window, `worker` runs a send off the Tk event loop, `dialogs` asks and tells,
`presets_editor` adds and changes presets. Nothing here imports the server side
(tests/unit/client/test_import_boundary.py).
"""

print("pos-terminal: not built yet")

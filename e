/dev/fd/3: line 64: qdmed: command not found

"""Files (the bottom layer): atomic writes and folder checks (`storage`), text files users write
(`text_files`), prompt lists (`prompts`), image files read (`image_files`), images and plots drawn
(`drawing`), crash injection for the kill -9 tests (`faults`). Imports nothing else of fdfo_core."""

"""Image grids with captions: labels wrap to the tile, long captions are shortened, and the text
really is drawn under each tile (fdfo demo's before/after picture)."""

import numpy as np
import torch

from fdfo_core.files.drawing import _font, caption_label, image_grid, side_by_side, text_width, wrap_text, with_header

CAPTION = "two red circles above a blue square on a yellow background"


def test_wrap_text_fits_the_width_and_shortens_what_does_not_fit():
    font = _font()
    lines = wrap_text(CAPTION, 126, 3)
    assert " ".join(lines) == CAPTION and all(text_width(x, font) <= 126 for x in lines)
    long = wrap_text(CAPTION + " and three green triangles below a black star on white", 126, 3)
    assert len(long) == 3 and long[-1].endswith("...") and all(text_width(x, font) <= 126 for x in long)
    assert wrap_text("supercalifragilisticexpialidocious", 40, 2)[0].endswith("...")


def test_caption_label_puts_the_score_last():
    label = caption_label(CAPTION, "score 0.83", 128)
    assert label.split("\n")[-1] == "score 0.83" and CAPTION.startswith(label.split("\n")[0])


def test_grid_labels_get_room_for_every_line_and_are_drawn():
    images = torch.ones(4, 3, 32, 32)
    labels = [caption_label(CAPTION, f"score 0.{i}", 64) for i in range(4)]
    grid = image_grid(images, ncol=2, labels=labels, scale=2)
    n_lines = max(len(x.split("\n")) for x in labels)
    assert n_lines >= 3
    assert grid.height == 2 * (64 + 13 * n_lines + 2 + 2) + 2
    a = np.asarray(grid.convert("L"), dtype=np.float32)
    for row in range(2):
        top = 2 + row * (64 + 13 * n_lines + 4) + 64
        for k in range(n_lines):  # every line of the label area has dark (text) pixels
            band = a[top + 1 + 13 * k: top + 1 + 13 * (k + 1), :]
            assert (band < 128).any(), (row, k)


def test_header_and_vertical_comparison():
    grid = image_grid(torch.zeros(8, 3, 16, 16), ncol=4)
    panel = with_header(grid, ["epoch 3/40 · reward 0.5 ± 0.1 · about 2 min left"])
    assert panel.height > grid.height and panel.width >= grid.width
    both = side_by_side(grid, grid, ("base", "trained"), vertical=True)
    assert both.width == grid.width and both.height == 2 * grid.height + 2 * 18 + 12

"""Flow-matching numerics, framework-free: time grids and churn (`schedules`), paired sampling
(`paired_sampler`), conditioning dicts (`conditioning`), the image sizes a model can make
(`image_sizes`), seeds (`seeds`), the FDFO objective (`objective`). Imports only `files` and `errors`."""

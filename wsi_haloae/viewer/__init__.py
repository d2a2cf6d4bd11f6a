"""A local web viewer of one heatmap output folder: `wsi-haloae view OUT/<slide>` (see `server`)."""

"""Report layer: metrics, statistics, the arms' analysis, result tables, provenance text and figures. Never imports training."""

"""Reports to look at: the data (``eda``) and a run or CV folder (``report``), each one self-contained HTML page."""

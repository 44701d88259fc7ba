namespace kiln::gitlab {}

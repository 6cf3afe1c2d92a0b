"""The label review page (``maskstatus review``): go through a CV's label suspects by keyboard, save every
decision as it is made, and export the relabel CSV the next CV trains on."""

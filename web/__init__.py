"""Static files of the browser UI, served by the gateway at /."""

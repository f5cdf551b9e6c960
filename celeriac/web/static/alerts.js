// celeriac: the alerts page redraws itself every few seconds while it is visible.
"use strict";

setInterval(() => {
  if (!document.hidden) C.reloadMain();
}, 5000);

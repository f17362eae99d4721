// A classic (blocking) script: applies the saved theme before the first paint.
try {
  const theme = localStorage.getItem("parlance.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {
  // Storage blocked: the system preference applies.
}

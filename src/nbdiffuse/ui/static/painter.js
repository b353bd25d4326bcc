// The mask painter (nbdiffuse.ui.painter.MaskPainter): paint the area to inpaint over the init image.
//
// The model holds everything (the init image as PNG bytes, the mask as PNG bytes, brush size, erase), so a view
// that JupyterLab re-creates (windowed notebooks drop off-screen outputs) is redrawn from it. The mask is a canvas of
// the init image's own size; what is painted is opaque (alpha 255, antialiased at the edge), the rest transparent,
// like the RGBA mask of A1111's Inpaint tab. It is sent to the kernel as one PNG when a stroke ends.

const PAINT = "rgb(255, 64, 160)";

function displayWidth(width) {
  // small images are shown larger (a 64x64 image is too small to paint on); big ones fit the panel
  return Math.min(512, Math.max(256, width));
}

function sameBytes(a, b) {
  if (!a || !b || a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function el(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

function render({ model, el: root }) {
  root.classList.add("nbd-painter");
  const labels = () => model.get("labels") || {};

  const tools = el("div", "nbd-painter-tools", root);
  const sizeLabel = el("label", "nbd-painter-size", tools);
  const sizeText = el("span", "", sizeLabel);
  const size = el("input", "", sizeLabel);
  size.type = "range";
  size.min = "1";
  size.max = "256";
  const sizeValue = el("span", "nbd-painter-size-value", sizeLabel);
  const eraseLabel = el("label", "nbd-painter-erase", tools);
  const erase = el("input", "", eraseLabel);
  erase.type = "checkbox";
  const eraseText = el("span", "", eraseLabel);
  const clear = el("button", "nbd-painter-clear", tools);
  clear.type = "button";

  const stage = el("div", "nbd-painter-stage", root);
  const picture = el("img", "nbd-painter-image", stage);
  picture.draggable = false;
  const canvas = el("canvas", "nbd-painter-canvas", stage);
  const ring = el("div", "nbd-painter-ring", stage);
  const empty = el("div", "nbd-painter-empty", stage);
  const ctx = canvas.getContext("2d");

  let url = null;
  let lastSent = null; // the mask bytes this view sent last: the kernel's echo of them is not redrawn
  let drawing = null; // the pointer id and last point of the stroke in progress

  function showLabels() {
    const t = labels();
    sizeText.textContent = (t.brush_size || "Brush size") + " ";
    eraseText.textContent = " " + (t.erase || "Erase");
    clear.textContent = t.clear || "Clear";
    empty.textContent = t.no_image || "Choose an init image first.";
  }

  function showTools() {
    size.value = String(model.get("brush_size"));
    sizeValue.textContent = " " + model.get("brush_size") + " px";
    erase.checked = !!model.get("erase");
  }

  function showImage() {
    const data = model.get("image");
    if (url) URL.revokeObjectURL(url);
    url = null;
    const width = model.get("width");
    const height = model.get("height");
    const has = data && data.byteLength > 0 && width > 0 && height > 0;
    stage.classList.toggle("nbd-painter-blank", !has);
    if (!has) {
      picture.removeAttribute("src");
      return;
    }
    url = URL.createObjectURL(new Blob([data], { type: "image/png" }));
    picture.src = url;
    stage.style.width = displayWidth(width) + "px";
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width; // resizing a canvas clears it: the mask is drawn again from the model
      canvas.height = height;
      showMask(true);
    }
  }

  function showMask(force) {
    const data = model.get("mask");
    if (!force && sameBytes(data, lastSent)) return;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!data || data.byteLength === 0) return;
    const image = new Image();
    const maskUrl = URL.createObjectURL(new Blob([data], { type: "image/png" }));
    image.onload = () => {
      if (drawing) return; // a stroke started meanwhile: keep what the user is painting
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.globalCompositeOperation = "source-over";
      ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
      URL.revokeObjectURL(maskUrl);
    };
    image.src = maskUrl;
  }

  function send() {
    if (canvas.width === 0 || canvas.height === 0) return; // no image yet: nothing to send
    canvas.toBlob(async (blob) => {
      if (!blob) return;
      const buffer = await blob.arrayBuffer();
      lastSent = new DataView(buffer);
      model.set("mask", new DataView(buffer));
      model.save_changes();
    }, "image/png");
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return [((event.clientX - rect.left) * canvas.width) / rect.width,
            ((event.clientY - rect.top) * canvas.height) / rect.height];
  }

  function moveRing(event) {
    const rect = canvas.getBoundingClientRect();
    const d = (model.get("brush_size") * rect.width) / Math.max(canvas.width, 1);
    ring.style.width = ring.style.height = d + "px";
    ring.style.left = event.clientX - rect.left - d / 2 + "px";
    ring.style.top = event.clientY - rect.top - d / 2 + "px";
    ring.style.display = "block";
  }

  function segment(from, to) {
    ctx.globalCompositeOperation = model.get("erase") ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.lineWidth = model.get("brush_size");
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
  }

  function down(event) {
    if (event.button !== 0 || canvas.width === 0 || stage.classList.contains("nbd-painter-blank")) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    const p = point(event);
    drawing = { id: event.pointerId, last: p };
    segment(p, p); // a click paints a dot
  }

  function move(event) {
    moveRing(event);
    if (!drawing || event.pointerId !== drawing.id) return;
    const p = point(event);
    segment(drawing.last, p);
    drawing.last = p;
  }

  function up(event) {
    if (!drawing || event.pointerId !== drawing.id) return;
    drawing = null;
    send();
  }

  const listeners = [
    [canvas, "pointerdown", down], [canvas, "pointermove", move], [canvas, "pointerup", up],
    [canvas, "pointercancel", up], [canvas, "pointerleave", () => { ring.style.display = "none"; }],
    [size, "input", () => { model.set("brush_size", Number(size.value)); model.save_changes(); }],
    [erase, "change", () => { model.set("erase", erase.checked); model.save_changes(); }],
    [clear, "click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); send(); }],
  ];
  for (const [target, name, fn] of listeners) target.addEventListener(name, fn);
  const changes = [
    ["change:labels", showLabels], ["change:brush_size", showTools], ["change:erase", showTools],
    ["change:image", showImage], ["change:width", showImage], ["change:height", showImage],
    ["change:mask", () => showMask(false)],
  ];
  for (const [name, fn] of changes) model.on(name, fn);

  showLabels();
  showTools();
  showImage();
  showMask(true);

  return () => {
    for (const [target, name, fn] of listeners) target.removeEventListener(name, fn);
    for (const [name, fn] of changes) model.off(name, fn);
    if (url) URL.revokeObjectURL(url);
  };
}

export default { render };

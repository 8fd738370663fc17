import { mount } from 'svelte';
import App from './App.svelte';
import './styles/app.css';
import { installPalette } from './styles/palette';
import { ensureIsolation } from './isolation';

const reloading = await ensureIsolation();
installPalette(document.documentElement);

export default reloading ? undefined : mount(App, { target: document.getElementById('app')! });

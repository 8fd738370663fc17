import { mount } from 'svelte';
import App from './App.svelte';
import './app.css';
import { ensureIsolation } from './isolation';

const reloading = await ensureIsolation();

export default reloading ? undefined : mount(App, { target: document.getElementById('app')! });
